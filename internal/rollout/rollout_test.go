package rollout

import (
	"fmt"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func sel(s string) labels.Selector {
	l, err := labels.Parse(s)
	if err != nil {
		panic(err)
	}
	return l
}

func ptr[T any](v T) *T { return &v }

func fleet(n int, canaries ...string) []Target {
	var out []Target
	for i := 0; i < n; i++ {
		out = append(out, Target{Name: fmt.Sprintf("c%02d", i), Labels: map[string]string{}})
	}
	for _, c := range canaries {
		for i := range out {
			if out[i].Name == c {
				out[i].Labels["canary"] = "true"
			}
		}
	}
	return out
}

func TestPlanFreezesTargetsIntoWaves(t *testing.T) {
	g := NewWithT(t)
	spec := Spec{Waves: []WaveSpec{{Name: "canary", Selector: sel("canary=true")}, {Name: "empty", Selector: sel("nope=1")}}}
	waves := Plan(spec, fleet(4, "c02"))
	g.Expect(waves).To(Equal([]Wave{{Name: "canary", Clusters: []string{"c02"}}, {Name: "empty"}, {Name: RestWave, Clusters: []string{"c00", "c01", "c03"}}}))
	g.Expect(Plan(Spec{}, nil)).To(Equal([]Wave{{Name: RestWave}}))
}

func TestCanaryThenBakeThenRest(t *testing.T) {
	g := NewWithT(t)
	now := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	spec := Spec{MaxConcurrency: ptr(intstr.FromInt32(2)), BakeTime: 5 * time.Minute,
		Waves: []WaveSpec{{Name: "canary", Selector: sel("canary=true")}}}
	waves := Plan(spec, fleet(5, "c03"))
	st := map[string]State{}

	d := Decide(spec, waves, st, now)
	g.Expect(d.Wave).To(Equal(0))
	g.Expect(d.Start).To(Equal([]string{"c03"}), "the canary alone")
	st["c03"] = Running
	d = Decide(spec, waves, st, now)
	g.Expect(d.Start).To(BeEmpty())

	st["c03"] = Succeeded
	d = Decide(spec, waves, st, now)
	g.Expect(d.Start).To(BeEmpty(), "baking")
	g.Expect(d.RequeueAfter).To(Equal(5 * time.Minute))
	g.Expect(d.Waiting).To(ContainSubstring("bake time: wave canary completed"))
	waves[0].CompletedAt = d.CompletedAt[0]

	// The canary regresses during the bake: the bake starts again once it is back.
	st["c03"] = Running
	d = Decide(spec, waves, st, now.Add(4*time.Minute))
	g.Expect(d.CompletedAt[0]).To(BeNil())
	waves[0].CompletedAt = nil
	st["c03"] = Succeeded
	d = Decide(spec, waves, st, now.Add(5*time.Minute))
	waves[0].CompletedAt = d.CompletedAt[0]
	g.Expect(d.Start).To(BeEmpty())
	g.Expect(*waves[0].CompletedAt).To(Equal(now.Add(5 * time.Minute)))

	d = Decide(spec, waves, st, now.Add(10*time.Minute))
	g.Expect(d.Wave).To(Equal(1))
	g.Expect(d.Start).To(Equal([]string{"c00", "c01"}), "maxConcurrency 2")
	g.Expect(d.Waiting).To(ContainSubstring("2 waiting"))
	st["c00"], st["c01"] = Running, Succeeded
	d = Decide(spec, waves, st, now.Add(10*time.Minute))
	g.Expect(d.Start).To(Equal([]string{"c02"}))
	st["c00"], st["c02"], st["c04"] = Succeeded, Succeeded, Succeeded
	d = Decide(spec, waves, st, now.Add(11*time.Minute))
	g.Expect(d.Complete).To(BeTrue())
}

func TestAFailedCanaryHaltsAndNothingElseStarts(t *testing.T) {
	g := NewWithT(t)
	spec := Spec{Waves: []WaveSpec{{Name: "canary", Selector: sel("canary=true")}}}
	waves := Plan(spec, fleet(10, "c00", "c01"))
	st := map[string]State{"c00": Failed, "c01": Succeeded}
	d := Decide(spec, waves, st, time.Now())
	g.Expect(d.Halted).To(BeTrue())
	g.Expect(d.Start).To(BeEmpty())
	g.Expect(d.Waiting).To(ContainSubstring("1 of 2 clusters of wave canary failed, more than maxFailures (0)"))

	// Within the budget (50% of 2 = 1) the rollout goes on.
	spec.MaxFailures = ptr(intstr.FromString("50%"))
	d = Decide(spec, waves, st, time.Now())
	g.Expect(d.Halted).To(BeFalse())
	g.Expect(d.Wave).To(Equal(1))
	g.Expect(d.Start).To(HaveLen(8), "default concurrency 10 covers the rest")
}

func TestFleetChangesDoNotReorderOrAbort(t *testing.T) {
	g := NewWithT(t)
	spec := Spec{MaxConcurrency: ptr(intstr.FromString("50%"))}
	waves := Plan(spec, fleet(4))
	// c01 is deleted mid-rollout; c99 joins (not in the frozen waves, so never started here).
	st := map[string]State{"c00": Succeeded, "c01": Gone, "c99": Pending}
	d := Decide(spec, waves, st, time.Now())
	g.Expect(d.Start).To(Equal([]string{"c02", "c03"}), "50% of the 3 remaining, rounded up")
	st["c02"], st["c03"] = Succeeded, Succeeded
	g.Expect(Decide(spec, waves, st, time.Now()).Complete).To(BeTrue())
}

func TestWaveConcurrencyOverridesTheRollouts(t *testing.T) {
	g := NewWithT(t)
	spec := Spec{MaxConcurrency: ptr(intstr.FromInt32(10)),
		Waves: []WaveSpec{{Name: "first", Selector: sel("canary=true"), MaxConcurrency: ptr(intstr.FromInt32(1))}}}
	waves := Plan(spec, fleet(6, "c00", "c01", "c02"))
	d := Decide(spec, waves, map[string]State{}, time.Now())
	g.Expect(d.Start).To(Equal([]string{"c00"}))
}

func TestAnUnreachableCanaryBlocksTheNextWaveWithoutTakingSlots(t *testing.T) {
	g := NewWithT(t)
	spec := Spec{MaxConcurrency: ptr(intstr.FromInt32(1)), Waves: []WaveSpec{{Name: "canary", Selector: sel("canary=true")}}}
	waves := Plan(spec, fleet(6, "c00", "c01"))
	// c00 is unreachable: c01 still starts (no slot taken), and the prod wave does not.
	d := Decide(spec, waves, map[string]State{"c00": Blocked}, time.Now())
	g.Expect(d.Wave).To(Equal(0))
	g.Expect(d.Start).To(Equal([]string{"c01"}))
	d = Decide(spec, waves, map[string]State{"c00": Blocked, "c01": Succeeded}, time.Now())
	g.Expect(d.Wave).To(Equal(0), "a canary wave with an unreachable member is not complete")
	g.Expect(d.Start).To(BeEmpty())
	g.Expect(d.Halted).To(BeFalse(), "unreachable is not a failure")
	g.Expect(d.Waiting).To(ContainSubstring("1 clusters unreachable"))
	// Back and done: the next wave starts.
	d = Decide(spec, waves, map[string]State{"c00": Succeeded, "c01": Succeeded}, time.Now())
	g.Expect(d.Wave).To(Equal(1))
	g.Expect(d.Start).To(HaveLen(1))
}

// A canary that failed and waits for its retry is no failure yet (no halt at maxFailures 0) and
// keeps its wave incomplete (with a failure budget and no bake time, the next wave does not start
// before the canary has the change).
func TestACanaryWaitingForItsRetryHoldsTheNextWave(t *testing.T) {
	g := NewWithT(t)
	// Within a budget of 1: no halt, but the wave is open.
	spec := Spec{MaxFailures: ptr(intstr.FromInt32(1)), Waves: []WaveSpec{{Name: "canary", Selector: sel("canary=true")}}}
	waves := Plan(spec, fleet(4, "c00"))
	d := Decide(spec, waves, map[string]State{"c00": Retrying}, time.Now())
	g.Expect(d.Halted).To(BeFalse())
	g.Expect(d.Wave).To(Equal(0))
	g.Expect(d.Start).To(BeEmpty())
	g.Expect(d.Waiting).To(ContainSubstring("1 failed clusters wait to be retried"))
	// Beyond it (maxFailures 0): halted while it waits, so the rest of its wave does not start.
	spec.MaxFailures = ptr(intstr.FromInt32(0))
	waves = Plan(spec, fleet(4, "c00", "c01"))
	d = Decide(spec, waves, map[string]State{"c00": Retrying}, time.Now())
	g.Expect(d.Halted).To(BeTrue())
	g.Expect(d.Start).To(BeEmpty(), "c01 waits")
	g.Expect(d.Waiting).To(ContainSubstring("1 of them are retried"))
	// Due again: started alone, and the halt holds until it succeeds.
	d = Decide(spec, waves, map[string]State{"c00": RetryDue}, time.Now())
	g.Expect(d.Halted).To(BeTrue())
	g.Expect(d.Start).To(Equal([]string{"c00"}))
	d = Decide(spec, waves, map[string]State{"c00": Succeeded}, time.Now())
	g.Expect(d.Halted).To(BeFalse())
	g.Expect(d.Start).To(Equal([]string{"c01"}))
}

// A retry is started while its failure halts the wave, and nothing else is: while it waits, is
// due, or runs, it counts against the budget, so no pass in between lets more clusters start.
func TestARetryRunsWhileHaltedAndNothingElseStartsMeanwhile(t *testing.T) {
	g := NewWithT(t)
	now := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	spec := Spec{MaxConcurrency: ptr(intstr.FromInt32(2))}
	waves := Plan(spec, fleet(20))
	st := map[string]State{}
	for _, c := range waves[0].Clusters {
		st[c] = Pending
	}
	st["c00"], st["c01"] = Succeeded, Succeeded
	for _, s := range []State{Retrying, RetryDue, RetryRunning} {
		st["c02"] = s
		d := Decide(spec, waves, st, now)
		g.Expect(d.Halted).To(BeTrue(), "state %d", s)
		if s == RetryDue {
			g.Expect(d.Start).To(Equal([]string{"c02"}), "the retry alone starts")
		} else {
			g.Expect(d.Start).To(BeEmpty(), "state %d", s)
		}
		g.Expect(d.Waiting).To(ContainSubstring("the halt lifts if they succeed"))
	}
	// Retries due start within the wave's concurrency, and only they.
	st["c02"], st["c03"], st["c04"] = RetryDue, RetryDue, RetryDue
	d := Decide(spec, waves, st, now)
	g.Expect(d.Halted).To(BeTrue())
	g.Expect(d.Start).To(Equal([]string{"c02", "c03"}))
	st["c02"] = RetryRunning
	g.Expect(Decide(spec, waves, st, now).Start).To(Equal([]string{"c03"}))
	// A failure with no retries left: the halt holds whatever the retries do, and says so.
	st["c05"] = Failed
	d = Decide(spec, waves, st, now)
	g.Expect(d.Waiting).NotTo(ContainSubstring("lifts"))
	// Within budget, retries go first.
	spec.MaxFailures = ptr(intstr.FromInt32(10))
	st["c02"] = Succeeded
	d = Decide(spec, waves, st, now)
	g.Expect(d.Halted).To(BeFalse())
	g.Expect(d.Start).To(Equal([]string{"c03", "c04"}))
	// Once the retry succeeded, the rest starts.
	spec.MaxFailures = nil
	st["c03"], st["c04"], st["c05"] = Succeeded, Succeeded, Succeeded
	d = Decide(spec, waves, st, now)
	g.Expect(d.Halted).To(BeFalse())
	g.Expect(d.Start).To(Equal([]string{"c06", "c07"}))
}

// A failure that waits for someone (Recheck) is looked at again without reopening its wave: a
// completed wave stays completed (its bake time is not restarted), and a halt it causes starts
// nothing but the rechecks.
func TestARecheckNeverReopensItsWave(t *testing.T) {
	g := NewWithT(t)
	now := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	spec := Spec{MaxFailures: ptr(intstr.FromInt32(1)), MaxConcurrency: ptr(intstr.FromInt32(1)), BakeTime: 10 * time.Minute,
		Waves: []WaveSpec{{Name: "canary", Selector: sel("canary=true")}}}
	waves := Plan(spec, fleet(5, "c00", "c01"))
	done := now.Add(-time.Minute)
	waves[0].CompletedAt = &done
	st := map[string]State{"c00": Succeeded, "c01": Recheck}
	d := Decide(spec, waves, st, now)
	g.Expect(d.Wave).To(Equal(0))
	g.Expect(d.CompletedAt[0]).To(Equal(&done), "still completed, the bake time runs on")
	g.Expect(d.Recheck).To(Equal([]string{"c01"}))
	g.Expect(d.Start).To(BeEmpty())
	// Baked: the next wave starts, and the canary's recheck goes on.
	d = Decide(spec, waves, st, now.Add(10*time.Minute))
	g.Expect(d.Wave).To(Equal(1))
	g.Expect(d.Start).To(Equal([]string{"c02"}))
	g.Expect(d.Recheck).To(Equal([]string{"c01"}))
	// Beyond the budget: halted, and only rechecks start.
	spec.MaxFailures = nil
	d = Decide(spec, waves, st, now)
	g.Expect(d.Halted).To(BeTrue())
	g.Expect(d.Start).To(BeEmpty())
	g.Expect(d.Recheck).To(Equal([]string{"c01"}))
	// A running recheck takes its slot: nothing else starts in it, and it is not listed again.
	spec.MaxFailures = ptr(intstr.FromInt32(1))
	st = map[string]State{"c00": Succeeded, "c01": RecheckRunning}
	d = Decide(spec, waves, map[string]State{"c00": RetryDue, "c01": RecheckRunning}, now)
	g.Expect(d.Start).To(BeEmpty(), "maxConcurrency 1, taken by the recheck")
	d = Decide(spec, waves, st, now)
	g.Expect(d.CompletedAt[0]).To(Equal(&done), "a running recheck keeps no wave open")
	g.Expect(d.Recheck).To(BeEmpty())
	// A full wave gives rechecks no slot.
	st = map[string]State{"c00": Succeeded, "c01": Succeeded, "c02": Recheck, "c03": Running}
	d = Decide(spec, waves, st, now.Add(time.Hour))
	g.Expect(d.Wave).To(Equal(1))
	g.Expect(d.Recheck).To(BeEmpty())
}
