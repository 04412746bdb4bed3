# The two commands of the README: `make lab` (main job on the built-in lab) and `make test`.
SHELL := /bin/bash
VENV := .venv/bin
export PATH := $(CURDIR)/.venv/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg

.PHONY: setup lab lab-down test lint unit integration molecule collection venv-upgrade

setup:
	@scripts/setup

lab: setup
	$(VENV)/python -m travis_lab demo

lab-down: setup
	$(VENV)/python -m travis_lab demo --down

test: setup
	scripts/test

lint: setup
	scripts/test lint

unit: setup
	scripts/test unit

integration: setup
	scripts/test integration

molecule: setup
	scripts/test molecule

collection: setup
	$(VENV)/ansible-galaxy collection build --force --output-path build/

venv-upgrade:
	python3 -m venv .cache/upgrade-venv && .cache/upgrade-venv/bin/pip install -q -U $$(grep -Eo '^[A-Za-z0-9_.-]+' requirements.txt) && .cache/upgrade-venv/bin/pip freeze
