"""fedimg's outcome vocabulary, defined once: what a test concluded, how an image ended, and
what a stage event says. Plain strings, because they travel as they are in bus messages,
ResultsDB results, AWS records and JSON output.
"""

from __future__ import annotations

# A test's verdict (EC2 boot test, local QEMU boot, one check); ResultsDB's outcome names.
PASSED = "PASSED"
FAILED = "FAILED"
# The infrastructure failed, not the image: nothing is concluded about the image.
NEEDS_INSPECTION = "NEEDS_INSPECTION"
TEST_OUTCOMES = (PASSED, FAILED, NEEDS_INSPECTION)

# How one image of a compose ended (the compose summary's per-image "outcome").
PUBLISHED = "published"
IMAGE_FAILED = "failed"  # a stage failed; ``retryable`` says whether a later run may do better
TEST_FAILED = "test-failed"  # its boot test failed and test.block_publish kept it private
IMAGE_OUTCOMES = (PUBLISHED, IMAGE_FAILED, TEST_FAILED)

# What a stage event (fedimg.events.Event.status) reports.
STARTED = "started"
COMPLETED = "completed"
STAGE_FAILED = "failed"
PROGRESS = "progress"
EVENT_STATUSES = (STARTED, COMPLETED, STAGE_FAILED, PROGRESS)
