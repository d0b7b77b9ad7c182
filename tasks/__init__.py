"""The 16 evaluation tasks of Bansal et al. (ACL 2023), as lm-evaluation-harness v0.3 builds them.

`tasks.registry.get_task(name, data_dir)` returns a Task; see tasks/base.py for the interface.
"""
