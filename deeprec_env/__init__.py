"""deeprec environment: datasets, text, TRM, protocol and env.

Never imports agents, rewards, TRL or Ray at import time.
"""
