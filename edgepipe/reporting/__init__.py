"""Reading results: the regression verdict between two deploys and its JUnit rendering."""
