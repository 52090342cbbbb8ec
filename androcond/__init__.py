"""androcond: move a running Docker container from a Linux host to an Android device, exactly once."""

import warnings

__version__ = "0.1.0"

# cryptography 51 deprecates DSA and warns when asyncssh merely imports its DSA types: androcond never uses DSA,
# and the warning on stderr would garble every verb's output (and the agent's stdio channel).
warnings.filterwarnings("ignore", message=r"DSA is deprecated", module=r"asyncssh(\.|$)")
