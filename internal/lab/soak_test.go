package lab

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestSoakConfigs(t *testing.T) {
	k := Soak{Guests: 3, Duration: 2 * time.Minute, FileMB: 64, FioMB: 16}
	require.Equal(t, "drvdom.scratch=/run/soak/g1.img:64M,/run/soak/g2.img:64M,/run/soak/g3.img:64M", k.DrvdomArgs())
	files := k.Files()
	require.Len(t, files, 3)
	cfg := files["soak2.cfg"]
	require.Contains(t, cfg, `name = "soak2"`)
	require.Contains(t, cfg, "lab.ip=169.254.0.12 lab.iperfport=5202")
	require.Contains(t, cfg, "target=/run/soak/g2.img")
	require.Contains(t, cfg, "mac=00:16:3e:4c:01:02")
	// Guests differ in everything a bridge or a backend keys on.
	require.NotEqual(t, k.guestMAC(1), k.guestMAC(3))
}

func TestSoakDom0ScriptInsertsBeforeSummary(t *testing.T) {
	k := DefaultSoak
	base := Scenario{Backend: BackendDrvdom, DrvdomImage: "/x.cpio.gz", NoGuest: true}.Dom0Script()
	script, err := k.Dom0Script(base)
	require.NoError(t, err)
	require.Less(t, strings.Index(script, "lab_t drvdom-ready"), strings.Index(script, "SOAK baseline"))
	require.Less(t, strings.Index(script, "ck soak-goroutines-baseline"), strings.Index(script, "lab_t dom0-done"))
	require.Contains(t, script, "SOAK_SECONDS=600\n")
	for _, c := range SoakChecks {
		if strings.HasPrefix(c, "soak-") {
			require.Contains(t, script, "ck "+c+" ", c)
		}
	}
	_, err = k.Dom0Script("echo something else\n")
	require.Error(t, err)
	// dom0 runs it with sh (dash in the lab): it must parse.
	if sh, err := exec.LookPath("sh"); err == nil {
		f := filepath.Join(t.TempDir(), "dom0.sh")
		require.NoError(t, os.WriteFile(f, []byte(script), 0o644))
		out, err := exec.Command(sh, "-n", f).CombinedOutput()
		require.NoError(t, err, string(out))
		g := filepath.Join(t.TempDir(), "guest.sh")
		require.NoError(t, os.WriteFile(g, []byte(k.GuestScript()), 0o644))
		out, err = exec.Command("bash", "-n", g).CombinedOutput()
		require.NoError(t, err, string(out))
	}
}

// The dom0 soak's counting must read the guests' markers as lab_mark
// prints them.
func TestSoakCountsGuestMarkers(t *testing.T) {
	dir := t.TempDir()
	log := "@@LAB SOAK cycle soak1 1 fio=0 iperf=0@@\n@@LAB SOAK cycle soak1 2 fio=1 iperf=0@@\n" +
		"@@LAB SOAK reattach soak1 2 gone=0 back=0 reverify=0@@\n@@LAB SOAK cycle soak1 3 fio=0 iperf=1@@\n"
	L := filepath.Join(dir, "g.log")
	require.NoError(t, os.WriteFile(L, []byte(log), 0o644))
	count := func(pipeline string) string {
		out, err := exec.Command("sh", "-c", pipeline).Output()
		require.NoError(t, err)
		return strings.TrimSpace(string(out))
	}
	require.Equal(t, "3", count(`grep -c "@@LAB SOAK cycle " `+L))
	require.Equal(t, "1", count(`grep "@@LAB SOAK cycle " `+L+` | grep -vc " fio=0 "`))
	require.Equal(t, "1", count(`grep "@@LAB SOAK cycle " `+L+` | grep -vc " iperf=0@@"`))
	require.Equal(t, "0", count(`grep "@@LAB SOAK reattach " `+L+` | grep -vc "gone=0 back=0 reverify=0@@" || true`))
	require.Contains(t, DefaultSoak.dom0Phase(), `grep -vc " fio=0 "`)
}
