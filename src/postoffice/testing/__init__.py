"""For people who test software that sends email: a capture server to run inside a test
process (:mod:`.server`), which the pytest plugin (the top-level module ``pytest_postoffice``)
starts for each test."""
