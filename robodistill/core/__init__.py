"""What every stage stands on: run directories, seeds, policy specs, episode summaries,
rollouts (here or in Ray actors), decision latency and videos."""
