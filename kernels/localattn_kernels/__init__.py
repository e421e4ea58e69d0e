"""Sink + sliding-window attention kernels: ``reference`` (torch oracle), ``cpu`` (vLLM's paged CPU cache),
``triton`` (vLLM's paged GPU cache), ``layout`` (the KV layout contract). Import the submodule you need; this
package imports nothing heavy."""
