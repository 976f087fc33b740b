"""Replicated mode: replicas on many machines over one NATS JetStream log of deltas (see README, "Replicas")."""
