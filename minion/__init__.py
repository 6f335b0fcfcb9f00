"""safcm minion: the daemon on each managed host, and the *at-syscall file engine."""
