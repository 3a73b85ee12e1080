"""Code generated from protos/ by protos/generate.sh. Do not edit."""
