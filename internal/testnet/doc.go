// Package testnet gives tests a private network namespace, so that tests
// creating links, bridges and TAPs never touch the host's interfaces. It
// exists on Linux only; its users are *_linux_test.go files.
package testnet
