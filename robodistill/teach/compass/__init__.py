"""COMPASS: an imitation-learned base with a world model, and a residual PPO specialist per
embodiment."""
