//go:build race

package canon

// raceDetector is true under -race, whose instrumentation allocates on its
// own account and so skews byte counts.
const raceDetector = true
