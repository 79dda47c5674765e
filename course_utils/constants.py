"""Names shared by the notebooks' side (training) and the runner's side, kept free of heavy imports."""

# Mimetype of the output that `course_utils.report` attaches to a notebook and the runner reads back.
RESULT_MIMETYPE = "application/vnd.course-utils.result+json"
