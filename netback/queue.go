package netback

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"drvdom/evtchn"
	"drvdom/grant"
	"drvdom/ring"
)

// queueConfig is what one queue needs to serve a frontend's ring pair.
type queueConfig struct {
	id     int
	front  uint16
	txRef  grant.Ref
	rxRef  grant.Ref
	txPort evtchn.Port // frontend's port (event-channel or event-channel-tx)
	rxPort evtchn.Port // frontend's rx port; == txPort when not split
	split  bool
	feat   frontFeatures
	rate   *rateLimit
	mcast  *mcastList
	mapper grant.Mapper
	events evtchn.Handle // this queue's own handle
	tap    TapQueue
	log    *slog.Logger
	stats  *counters
	// rxDrain: how long a packet waits for rx buffers (0: default).
	rxDrain time.Duration
}

// queue serves one tx/rx ring pair with two goroutines: the tx goroutine
// owns the event channel handle (it waits, unmasks, services the tx ring
// and wakes the rx goroutine), the rx goroutine owns the TAP queue's reads
// and the rx ring. Both stop when the serving context ends.
type queue struct {
	queueConfig
	txMap, rxMap grant.Mapping
	tx, rx       *ring.Back
	localTx      evtchn.Port // local port bound to the frontend's tx (or only) port
	localRx      evtchn.Port // == localTx when not split
	rxWake       chan struct{}
	txState
	rxState
}

// ErrRing is returned by a queue whose frontend corrupted a ring (overflow).
var ErrRing = errors.New("netback: ring corrupted by the frontend")

// newQueue maps the rings and binds the event channels. On error nothing
// stays mapped or bound.
func newQueue(cfg queueConfig) (q *queue, err error) {
	q = &queue{queueConfig: cfg, rxWake: make(chan struct{}, 1)}
	defer func() {
		if err != nil {
			q.release()
			q = nil
		}
	}()
	if q.txMap, err = cfg.mapper.Map(cfg.front, []grant.Ref{cfg.txRef}, true); err != nil {
		return q, fmt.Errorf("queue %d: map tx ring ref %d: %w", cfg.id, cfg.txRef, err)
	}
	if q.rxMap, err = cfg.mapper.Map(cfg.front, []grant.Ref{cfg.rxRef}, true); err != nil {
		return q, fmt.Errorf("queue %d: map rx ring ref %d: %w", cfg.id, cfg.rxRef, err)
	}
	if q.tx, err = ring.NewBack(q.txMap.Bytes(), TxEntrySize); err != nil {
		return q, fmt.Errorf("queue %d: tx ring: %w", cfg.id, err)
	}
	if q.rx, err = ring.NewBack(q.rxMap.Bytes(), RxEntrySize); err != nil {
		return q, fmt.Errorf("queue %d: rx ring: %w", cfg.id, err)
	}
	// Crash-only restart: responses below the shared rsp_prod were
	// published by an earlier backend process; requests it took but never
	// answered are taken again (a tx packet may go out twice, which the
	// network tolerates; an rx buffer is simply filled again). A fresh
	// ring has rsp_prod 0. Responses are always pushed a whole packet at a
	// time, so rsp_prod never splits a chain.
	q.tx.Resume(q.tx.SharedRspProd(), q.tx.SharedRspProd())
	q.rx.Resume(q.rx.SharedRspProd(), q.rx.SharedRspProd())
	if q.localTx, err = cfg.events.BindInterdomain(cfg.front, cfg.txPort); err != nil {
		return q, fmt.Errorf("queue %d: bind event channel %d: %w", cfg.id, cfg.txPort, err)
	}
	q.localRx = q.localTx
	if cfg.split {
		if q.localRx, err = cfg.events.BindInterdomain(cfg.front, cfg.rxPort); err != nil {
			return q, fmt.Errorf("queue %d: bind rx event channel %d: %w", cfg.id, cfg.rxPort, err)
		}
	}
	q.initTx()
	q.initRx()
	// A backend process that died after it published responses but before
	// it notified left the guest waiting for an event that never comes:
	// netfront looks at its rings only when notified, so a full tx ring
	// would stay full and rx buffers unreturned forever. One notification
	// per port at connect makes the guest look; to a fresh guest it is a
	// harmless spurious event.
	if err := q.events.Notify(q.localTx); err != nil {
		return q, fmt.Errorf("queue %d: notify event channel %d: %w", cfg.id, cfg.txPort, err)
	}
	if q.localRx != q.localTx {
		if err := q.events.Notify(q.localRx); err != nil {
			return q, fmt.Errorf("queue %d: notify rx event channel %d: %w", cfg.id, cfg.rxPort, err)
		}
	}
	return q, nil
}

// release unbinds and unmaps everything the queue holds. The goroutines
// must have stopped.
func (q *queue) release() error {
	var errs []error
	if q.events != nil {
		errs = append(errs, q.events.Close()) // unbinds every port of the handle
	}
	if q.txMap != nil {
		errs = append(errs, q.txMap.Unmap())
		q.txMap = nil
	}
	if q.rxMap != nil {
		errs = append(errs, q.rxMap.Unmap())
		q.rxMap = nil
	}
	return errors.Join(errs...)
}

// serve runs the queue's two goroutines (the caller's and one more) until
// ctx ends or one of them fails (a ring overflow by the frontend, the TAP gone); it returns the
// first failure, nil on a clean stop.
func (q *queue) serve(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	run := func(f func(context.Context) error) {
		defer wg.Done()
		if err := f(ctx); err != nil && ctx.Err() == nil {
			once.Do(func() { first = err })
			cancel()
		}
	}
	wg.Add(2)
	go run(q.serveRx)
	run(q.serveTx) // the caller's goroutine is the pair's other half
	wg.Wait()
	return first
}

// wakeRx pokes the rx goroutine without blocking.
func (q *queue) wakeRx() {
	select {
	case q.rxWake <- struct{}{}:
	default:
	}
}
