"""Self-improvement above the learner: deployments, lineages of agent versions, the gate's record."""
