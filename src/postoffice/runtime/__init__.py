"""Running the server as an operating-system process: the pid file, root and the configured
user, listeners bound before root is given up, worker processes, signals and the banner."""
