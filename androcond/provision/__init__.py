"""Making a device a target over adb alone: `doctor` says what it has of what androcond needs there."""
