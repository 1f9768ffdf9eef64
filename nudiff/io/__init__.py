"""Reading and writing images, instance maps and annotations."""
