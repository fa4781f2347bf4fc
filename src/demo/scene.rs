//! The demo camera's pictures: an orchard row seen from the arm, with red apples (discs)
//! among leaves, drawn in code. Apples sit at the centres of 32-pixel cells so the
//! shipped demo detector (assets/demo/detector.onnx) finds each exactly once.

/// Frame size: 640x512 letterboxes onto the detector's 640x640 input with 64 rows of
/// padding above, so cells in the picture line up with the model's cells.
pub const WIDTH: usize = 640;
pub const HEIGHT: usize = 512;
const CELL: usize = 32;

fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Where the apples of tree `tree` are (cell column, cell row).
pub fn apples(tree: u64) -> Vec<(usize, usize)> {
    let mut s = tree.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let n = 3 + (next(&mut s) % 6) as usize;
    let mut out: Vec<(usize, usize)> = Vec::new();
    while out.len() < n {
        // Not on the picture's border cells.
        let c = 1 + (next(&mut s) % (WIDTH / CELL - 2) as u64) as usize;
        let r = 1 + (next(&mut s) % (HEIGHT / CELL - 2) as u64) as usize;
        if !out.contains(&(c, r)) {
            out.push((c, r));
        }
    }
    out
}

/// An rgb8 picture of tree `tree`; `frame` moves the leaves a little.
pub fn render(tree: u64, frame: u64) -> Vec<u8> {
    let mut px = vec![0u8; WIDTH * HEIGHT * 3];
    for y in 0..HEIGHT {
        for x in 0..WIDTH {
            let i = (y * WIDTH + x) * 3;
            // Sky at the top, foliage below.
            let (r, g, b) = if y < 48 {
                (150, 190, 230)
            } else {
                let shade = ((x / 7 + y / 5 + frame as usize) % 9) as u8 * 4;
                (35 + shade / 2, 105 + shade, 40)
            };
            px[i] = r;
            px[i + 1] = g;
            px[i + 2] = b;
        }
    }
    let disc = |px: &mut Vec<u8>, cx: usize, cy: usize, rad: usize, col: (u8, u8, u8)| {
        for y in cy.saturating_sub(rad)..(cy + rad + 1).min(HEIGHT) {
            for x in cx.saturating_sub(rad)..(cx + rad + 1).min(WIDTH) {
                let (dx, dy) = (x as i64 - cx as i64, y as i64 - cy as i64);
                if dx * dx + dy * dy <= (rad * rad) as i64 {
                    let i = (y * WIDTH + x) * 3;
                    px[i] = col.0;
                    px[i + 1] = col.1;
                    px[i + 2] = col.2;
                }
            }
        }
    };
    // Dark leaves, then the apples on top.
    let mut s = tree.wrapping_add(77) | 1;
    for _ in 0..40 {
        let x = (next(&mut s) % WIDTH as u64) as usize;
        let y = 48 + (next(&mut s) % (HEIGHT - 48) as u64) as usize;
        disc(&mut px, x, y, 6, (20, 70, 25));
    }
    for (c, r) in apples(tree) {
        disc(
            &mut px,
            c * CELL + CELL / 2,
            r * CELL + CELL / 2,
            12,
            (205, 30, 35),
        );
    }
    px
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trees_differ_and_apples_stay_inside() {
        let a = apples(1);
        assert!((3..=8).contains(&a.len()));
        assert_ne!(a, apples(2));
        assert!(a.iter().all(
            |&(c, r)| (1..WIDTH / CELL - 1).contains(&c) && (1..HEIGHT / CELL - 1).contains(&r)
        ));
        assert_eq!(render(1, 0).len(), WIDTH * HEIGHT * 3);
    }
}
