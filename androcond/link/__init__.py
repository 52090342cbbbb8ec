"""Reaching a device and what travels over the link: adb, the ssh transport, files to send."""
