"""safcm master: the daemon, the configuration compiler, key and job stores, the CLI."""
