"""Code shared by master and minion: the wire protocol, crypto, the file model."""
