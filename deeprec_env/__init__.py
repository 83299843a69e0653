"""deeprec environment: datasets, text, TRM, the episode protocol and the Gymnasium env.

    import gymnasium, deeprec_env
    env = gymnasium.make("deeprec/DeepRec-v0", dataset="synthetic")           # a DeepRecEnv
    envs = gymnasium.make_vec("deeprec/DeepRec-v0", num_envs=8, dataset=...)  # a DeepRecVectorEnv

Never imports agents, rewards, TRL or Ray at import time.
"""

import gymnasium

gymnasium.register(
    id="deeprec/DeepRec-v0",
    entry_point="deeprec_env.stack:make_env",
    vector_entry_point="deeprec_env.stack:make_vector_env",
)
