"""The ``callstream`` command line: gateway, workers, the ACS call emulator and the demo.

The service packages are ``ingress``, ``egress``, ``workers`` and ``shared``; this package only
holds what a user runs from a terminal (the CLI, the emulator, the embedded demo).
"""
