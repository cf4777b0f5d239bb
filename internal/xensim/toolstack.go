package xensim

import (
	"context"

	"drvdom/xenstore"
)

// AddDevice writes one device's backend and frontend directories as libxl
// does, with a privileged client (dom0), in one transaction: the backend
// directory owned by backDom and readable by frontDom, the frontend
// directory the other way round, each holding the given keys.
func AddDevice(ctx context.Context, dom0 *xenstore.Client, backPath, frontPath string, backDom, frontDom uint16, back, front map[string]string) error {
	return dom0.Transaction(ctx, func(tx *xenstore.Tx) error {
		if err := writeDir(ctx, tx, backPath, backDom, frontDom, back); err != nil {
			return err
		}
		return writeDir(ctx, tx, frontPath, frontDom, backDom, front)
	})
}

// writeDir makes dir owned by owner and readable by reader, with keys.
func writeDir(ctx context.Context, tx *xenstore.Tx, dir string, owner, reader uint16, keys map[string]string) error {
	if err := tx.Mkdir(ctx, dir); err != nil {
		return err
	}
	perms := []xenstore.Perm{{Domid: owner, Access: xenstore.PermNone}, {Domid: reader, Access: xenstore.PermRead}}
	if err := tx.SetPerms(ctx, dir, perms); err != nil {
		return err
	}
	for k, v := range keys {
		if err := tx.Write(ctx, dir+"/"+k, v); err != nil {
			return err
		}
	}
	return nil
}
