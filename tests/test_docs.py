"""Documentation validation for every module and the inventory plugin of the collection.

Replaces the doc parts of ``ansible-test sanity`` (validate-modules): each module renders with
``ansible-doc``, has DOCUMENTATION, EXAMPLES and RETURN, and its ``argument_spec`` matches the documented
options (names, type, elements, default, choices, required, aliases, suboptions); options that can carry
secrets are ``no_log``. Examples must parse and use only documented options with the module's FQCN.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COLLECTIONS = ROOT / ".cache" / "collections"
if str(COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS))

from ansible.module_utils import basic  # noqa: E402

MODULES = sorted(p.stem for p in (ROOT / "plugins" / "modules").glob("*.py") if not p.stem.startswith("_"))
INVENTORY = sorted(
    p.stem for p in (ROOT / "plugins" / "inventory").glob("*.py") if not p.stem.startswith("_")
)
SECRET_NAME = re.compile(r"pass(word)?|passwd|token|secret|credential|api_key", re.IGNORECASE)
SECRET_DOC = re.compile(r"password|secret|never logged", re.IGNORECASE)


def ansible_doc(plugin_type: str, names: list) -> dict:
    env = dict(
        os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS)
    )
    fqcns = [f"travis.worker.{n}" for n in names]
    proc = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "ansible-doc"), "-t", plugin_type, "--json", *fqcns],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, f"ansible-doc failed for {fqcns}:\n{proc.stderr}"
    assert "WARNING" not in proc.stderr and "ERROR" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="session")
def module_docs() -> dict:
    return ansible_doc("module", MODULES)


@pytest.fixture(scope="session")
def inventory_docs() -> dict:
    return ansible_doc("inventory", INVENTORY)


class SpecCaptured(Exception):
    pass


def argument_spec(name: str) -> tuple:
    """Run the module's main() until it builds its AnsibleModule; return (argument_spec, kwargs)."""
    module = importlib.import_module(f"ansible_collections.travis.worker.plugins.modules.{name}")
    captured: dict = {}

    def init(self, argument_spec=None, **kwargs):
        captured.update(spec=argument_spec, kwargs=kwargs)
        raise SpecCaptured

    with mock.patch.object(basic.AnsibleModule, "__init__", init), pytest.raises(SpecCaptured):
        module.main()
    return captured["spec"], captured["kwargs"]


def compare_options(where: str, documented: dict, spec: dict) -> list:
    """Differences between documented options and an argument_spec (recursive for suboptions)."""
    problems = []
    if set(documented) != set(spec):
        problems.append(
            f"{where}: documented {sorted(set(documented) - set(spec))} not in argument_spec, "
            f"argument_spec {sorted(set(spec) - set(documented))} not documented"
        )
    for opt in sorted(set(documented) & set(spec)):
        doc, arg = documented[opt], spec[opt]
        here = f"{where}.{opt}"
        checks = {
            "type": (doc.get("type", "str"), arg.get("type", "str")),
            "default": (doc.get("default"), arg.get("default")),
            "choices": (doc.get("choices"), arg.get("choices")),
            "required": (bool(doc.get("required", False)), bool(arg.get("required", False))),
            "aliases": (sorted(doc.get("aliases") or []), sorted(arg.get("aliases") or [])),
        }
        if doc.get("type") == "list" or arg.get("type") == "list":
            checks["elements"] = (doc.get("elements"), arg.get("elements"))
        for key, (d, a) in checks.items():
            if d != a:
                problems.append(f"{here}: {key} documented {d!r}, argument_spec {a!r}")
        if doc.get("required") and "default" in doc and doc["default"] is not None:
            problems.append(f"{here}: required option with a default")
        text = " ".join(
            doc.get("description")
            if isinstance(doc.get("description"), list)
            else [str(doc.get("description"))]
        )
        secret = SECRET_NAME.search(opt) or SECRET_DOC.search(text)
        if secret and not arg.get("no_log"):
            problems.append(f"{here}: can carry a secret but argument_spec has no no_log=True")
        if "suboptions" in doc or "options" in arg:
            problems += compare_options(here, doc.get("suboptions") or {}, arg.get("options") or {})
    return problems


def test_every_module_is_checked():
    assert {"vagrant_vm", "vagrant_box"} <= set(MODULES)
    assert "vagrant" in INVENTORY


@pytest.mark.parametrize("name", MODULES)
def test_module_renders_with_all_sections(name, module_docs):
    entry = module_docs[f"travis.worker.{name}"]
    assert entry["doc"]["module"] == name
    assert entry["doc"]["short_description"]
    assert entry["doc"].get("description")
    assert entry["examples"].strip(), f"{name}: EXAMPLES is empty"
    assert entry["return"] is not None and entry["return"] != {}, f"{name}: RETURN is empty"
    assert entry["doc"].get("author"), f"{name}: author missing"


@pytest.mark.parametrize("name", MODULES)
def test_argument_spec_matches_documentation(name, module_docs):
    documented = module_docs[f"travis.worker.{name}"]["doc"].get("options") or {}
    spec, kwargs = argument_spec(name)
    problems = compare_options(name, documented, spec)
    assert not problems, "\n".join(problems)
    doc = module_docs[f"travis.worker.{name}"]["doc"]
    check_mode_doc = (doc.get("attributes") or {}).get("check_mode", {}).get("support")
    if check_mode_doc:
        supports = kwargs.get("supports_check_mode", False)
        assert (check_mode_doc != "none") == supports, (
            f"{name}: check_mode attribute {check_mode_doc} vs {supports}"
        )


@pytest.mark.parametrize("name", MODULES)
def test_examples_use_fqcn_and_documented_options(name, module_docs):
    entry = module_docs[f"travis.worker.{name}"]
    tasks = yaml.safe_load(entry["examples"])
    assert isinstance(tasks, list) and tasks, f"{name}: EXAMPLES must be a YAML list of tasks"
    options = entry["doc"].get("options") or {}
    allowed = set(options) | {a for o in options.values() for a in (o.get("aliases") or [])}
    fqcn = f"travis.worker.{name}"
    assert any(fqcn in task for task in tasks), f"{name}: no example uses {fqcn}"
    for task in tasks:
        assert task.get("name"), f"{name}: every example task needs a name"
        if fqcn not in task:  # a helper task of another module (e.g. a register before), checked there
            continue
        used = set(task[fqcn] or {})
        assert used <= allowed, f"{name}: example '{task['name']}' uses undocumented {sorted(used - allowed)}"
        missing = [o for o, d in options.items() if d.get("required") and o not in used]
        assert not missing, f"{name}: example '{task['name']}' misses required {missing}"


@pytest.mark.parametrize("name", MODULES)
def test_return_documents_types(name, module_docs):
    def walk(where: str, fields: dict) -> list:
        bad = []
        for key, field in fields.items():
            if not field.get("description"):
                bad.append(f"{where}.{key}: no description")
            if "type" not in field:
                bad.append(f"{where}.{key}: no type")
            bad += walk(f"{where}.{key}", field.get("contains") or {})
        return bad

    problems = walk(name, module_docs[f"travis.worker.{name}"]["return"] or {})
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", INVENTORY)
def test_inventory_plugin_docs_and_options(name, inventory_docs):
    entry = inventory_docs[f"travis.worker.{name}"]
    doc = entry["doc"]
    assert doc["name"] == name and doc["short_description"]
    assert entry["examples"].strip()
    options = doc["options"]
    assert options["plugin"]["required"] is True
    assert options["plugin"]["choices"] == [f"travis.worker.{name}"]
    source = (ROOT / "plugins" / "inventory" / f"{name}.py").read_text(encoding="utf-8")
    used = set(re.findall(r"get_option\(\"([a-z_]+)\"\)", source))
    assert used, "no get_option() calls found"
    assert used <= set(options), f"{name}: get_option of undocumented {sorted(used - set(options))}"
    example = yaml.safe_load(entry["examples"])
    assert example["plugin"] == f"travis.worker.{name}"
    assert set(example) <= set(options)
