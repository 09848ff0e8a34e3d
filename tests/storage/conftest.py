"""The node-process fixture of tests/node, for the NodeClient tests here."""

from tests.node.conftest import start_node  # noqa: F401
