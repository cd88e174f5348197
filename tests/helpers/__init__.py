"""What the test modules share: plain modules, never a test module. pytest rewrites
their asserts too (tests/conftest.py), so that a failing check here says what it got."""
