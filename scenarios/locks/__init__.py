"""Locks (the seed's third section): Redis, failover, RedLock, ZooKeeper, and the comparison."""
