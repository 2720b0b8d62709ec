"""The distributor: getting the fleet to where it should be — rollouts, membership and
liveness from heartbeats, each node's target version, catch-up."""
