package main

import "github.com/go-logr/logr"

func noopLogger() logr.Logger { return logr.Discard() }
