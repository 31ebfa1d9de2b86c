"""For people who test software that sends email: a capture server to run inside a test
process (:mod:`.server`) and the pytest plugin built on it (:mod:`.pytest_plugin`)."""
