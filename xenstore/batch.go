package xenstore

import (
	"context"
	"errors"
	"sync"
)

// ReadMany reads every path with all the requests in flight at once and
// returns the values and errors in the order of paths. In a driver
// domain one round trip to dom0's xenstored can take tens of
// milliseconds (TCG, a busy dom0), and a restarted backend reads every key
// of every device again: N keys cost about one round trip instead of N.
func (c *Client) ReadMany(ctx context.Context, paths []string) ([]string, []error) {
	vals := make([]string, len(paths))
	errs := make([]error, len(paths))
	var wg sync.WaitGroup
	for i, p := range paths {
		wg.Add(1)
		go func() { // owned: ends with its request
			defer wg.Done()
			vals[i], errs[i] = c.Read(ctx, p)
		}()
	}
	wg.Wait()
	return vals, errs
}

// KV is one key and its value.
type KV struct{ Key, Value string }

// WriteMany writes every pair inside the transaction with all the
// requests in flight at once (their order does not matter inside a
// transaction: it commits as a whole). It returns the errors joined.
func (t *Tx) WriteMany(ctx context.Context, kvs []KV) error {
	errs := make([]error, len(kvs))
	var wg sync.WaitGroup
	for i, kv := range kvs {
		wg.Add(1)
		go func() { // owned: ends with its request
			defer wg.Done()
			errs[i] = t.Write(ctx, kv.Key, kv.Value)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
