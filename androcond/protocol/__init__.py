"""The daemon–agent protocol: the framed messages of ``protocol.proto`` and how they travel.

Both sides import it; neither imports the other."""
