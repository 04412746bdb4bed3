# Copyright: travis.worker developers
# MIT License (see LICENSE or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
"""Documentation fragment travis.worker.attributes: the attribute support of every module here."""


class ModuleDocFragment:
    """Full check mode and diff mode, on POSIX hosts (with ansible.builtin.action_common_attributes)."""

    DOCUMENTATION = r"""
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
"""
