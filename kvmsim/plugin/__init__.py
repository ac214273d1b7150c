"""The edge into a Python test suite: the pytest plugin (``fixture``: ``kvm_host``,
``simulated_host``) and the fake ``fcntl`` it binds to pyfakefs (``fakefcntl``).  Its public
name is ``kvmsim.pytest_plugin``."""
