"""Helpers the tests share: photos, media makers, configs, loopback servers, HTTP signatures."""
