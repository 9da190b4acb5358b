"""Tests of the cluster of ``make cluster-up``, through its load balancer (make cluster-test)."""
