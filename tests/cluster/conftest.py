"""The `cluster` marker: tests that start a local SLURM cluster (deselect with -m 'not cluster')."""


def pytest_configure(config):
    config.addinivalue_line("markers", "cluster: runs the workflow on a local SLURM cluster (root, Debian packages)")
