"""Traffic routers: the implementations of `traffic_router.TrafficRouter` (replicas, gatewayAPI).

Kept free of imports so that the pure modules can be imported without the others.
"""
