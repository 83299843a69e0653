"""deeprec environment: datasets, text, TRM, protocol and env.

Never imports agents, rewards, TRL or Ray at import time.
"""

import gymnasium

gymnasium.register(id="deeprec/DeepRec-v0", entry_point="deeprec_env.registration:make_env")
