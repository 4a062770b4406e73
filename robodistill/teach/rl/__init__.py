"""RL teachers on stable-baselines3 and Ray RLlib, each with RND / RDD exploration."""
