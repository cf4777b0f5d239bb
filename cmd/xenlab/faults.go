package main

import (
	"context"
	"errors"

	"drvdom/internal/lab"
)

// faultsCmd runs the crash-only and watchdog scenarios.
func faultsCmd(ctx context.Context, p *lab.Progress, args []string) (int, error) {
	return 2, errors.New("faults: not implemented yet")
}
