"""Local Kubernetes for development and e2e tests: a real control plane on loopback plus fake GPU nodes.

Dev tooling only: the operator never imports this package. Entry points: `controlplane.up/down/status`,
`python -m localattn_dev.nodeagent`, and `localattn_dev.testing` for the e2e suites.
"""
