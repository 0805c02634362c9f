"""ipspool's tests, by kind: unit/, e2e/, system/ and package/, with their
helpers in support/. Being a package puts the repository root on sys.path
(pytest's rootdir-based import), so everything imports as ``tests.*``."""
