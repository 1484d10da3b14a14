"""Operations that make new structures from old ones: relaxations (:mod:`.optimize`) and
molecular dynamics (:mod:`.md`), each autoparallelized like every wfl_like operation."""
