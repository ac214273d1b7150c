"""The edge into a Python test suite: the pytest plugin (``fixture``: ``kvm_host``,
``simulated_host``) and the fake ``fcntl`` it binds to pyfakefs (``fakefcntl``); the
``pytest11`` entry point names ``kvmsim.plugin.fixture``."""
