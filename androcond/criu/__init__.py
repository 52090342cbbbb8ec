"""CRIU and runc on this machine: which CRIU does what, running runc, a dump's leftovers, the page server,
the Popcorn notify."""
