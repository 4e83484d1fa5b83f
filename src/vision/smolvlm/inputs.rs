//! What the decoder reads: the pictures' feature rows from the vision encoder, and the prompt's
//! embeddings with the rows of its `<image>` placeholders replaced by those features, in order.
//!
//! When `embed_tokens` is a plain table lookup (one `Gather` of a float table stored in the file), its
//! rows are read from the file instead of running it (`embedding`): the 113 MB table is then never held
//! in memory.

use ort::session::Session;
use ort::value::{Tensor, TensorRef};

use super::{SmolVlm, ort_error};
use crate::vision::AnalyseError;
use crate::vision::embedding::EmbeddingTable;
use crate::vision::preprocess::{ImageSettings, Pixels};

/// How prompt ids become embeddings: rows read from the `embed_tokens` file when that graph is a plain
/// table lookup (see `embedding`: the table is then never held in memory), else the graph run as is.
pub(super) enum Embedder {
    Table(EmbeddingTable),
    Graph(Session),
}

impl Embedder {
    /// The embeddings of `ids`, one row after the other.
    pub(super) fn embed(&mut self, ids: &[u32]) -> Result<Vec<f32>, AnalyseError> {
        let session = match self {
            Embedder::Table(table) => {
                return table
                    .lookup(ids)
                    .map_err(|error| AnalyseError::Model(error.to_string()));
            }
            Embedder::Graph(session) => session,
        };
        let ids: Vec<i64> = ids.iter().map(|id| i64::from(*id)).collect();
        let tensor = Tensor::from_array(([1, ids.len()], ids)).map_err(ort_error)?;
        let outputs = session
            .run(ort::inputs! {"input_ids" => tensor})
            .map_err(ort_error)?;
        let (_, embeds) = outputs["inputs_embeds"]
            .try_extract_tensor::<f32>()
            .map_err(ort_error)?;
        Ok(embeds.to_vec())
    }
}

/// Replaces the rows of `embeds` (one of `hidden` values per id of `ids`) at the `image_token` ids by
/// the rows of `features`, in order; there must be exactly one feature row per image token.
fn fill_image_rows(
    embeds: &mut [f32],
    ids: &[u32],
    image_token: u32,
    features: &[f32],
) -> Result<(), AnalyseError> {
    let hidden = embeds.len() / ids.len().max(1);
    let slots: Vec<usize> = ids
        .iter()
        .enumerate()
        .filter(|(_, id)| **id == image_token)
        .map(|(index, _)| index)
        .collect();
    if slots.len() * hidden != features.len() {
        return Err(AnalyseError::Model(format!(
            "the prompt has {} image tokens but the encoder gave {} feature rows",
            slots.len(),
            features.len() / hidden.max(1)
        )));
    }
    for (slot, row) in slots.iter().zip(features.chunks_exact(hidden)) {
        embeds[slot * hidden..(slot + 1) * hidden].copy_from_slice(row);
    }
    Ok(())
}

/// The most pixel values kept between answers: those of the largest still image (every tile of the
/// longest edge's grid and the global image; 17 tiles of SmolVLM2, 53 MB).
fn largest_pixel_buffer(image: &ImageSettings) -> usize {
    let tiles_per_side = image.longest_edge.div_ceil(image.tile) as usize;
    (tiles_per_side * tiles_per_side + 1) * 3 * (image.tile * image.tile) as usize
}

impl SmolVlm {
    /// Runs the vision encoder on preprocessed pixels (viewed, not copied), one image per run, and returns
    /// the feature rows of every image in order. One image at a time keeps the encoder's memory arena at
    /// one image's activations (its attention alone holds heads x patches² floats, about 50 MB for a
    /// 512-pixel image), and it was faster too: 13 tiles in runs of 4 against 1 took 6.6 against 6.2 s
    /// (int8) and 14.4 against 12.7 s (q4) (`lookout bench --split`).
    pub(super) fn encode_image(&mut self, pixels: &Pixels) -> Result<Vec<f32>, AnalyseError> {
        let tile = self.spec.image.tile as usize;
        let mask = vec![true; tile * tile];
        let mut features = Vec::new();
        for image in pixels.values.chunks(3 * tile * tile) {
            let values =
                TensorRef::from_array_view(([1, 1, 3, tile, tile], image)).map_err(ort_error)?;
            let mask = TensorRef::from_array_view(([1, 1, tile, tile], mask.as_slice()))
                .map_err(ort_error)?;
            let outputs = self
                .vision
                .run(ort::inputs! {"pixel_values" => values, "pixel_attention_mask" => mask})
                .map_err(ort_error)?;
            let (_, rows) = outputs["image_features"]
                .try_extract_tensor::<f32>()
                .map_err(ort_error)?;
            features.extend_from_slice(rows);
        }
        Ok(features)
    }

    /// Embeddings of `ids` with the `<image>` rows replaced by `features`, in order.
    pub(super) fn embed_with_image(
        &mut self,
        ids: &[u32],
        features: &[f32],
    ) -> Result<Vec<f32>, AnalyseError> {
        let mut embeds = self.embedder.embed(ids)?;
        fill_image_rows(&mut embeds, ids, self.spec.image_token_id, features)?;
        Ok(embeds)
    }

    /// Keeps `values` for the next answer if no larger than the largest still image needs: a long
    /// clip's buffer is freed rather than held for good.
    pub(super) fn keep_pixel_buffer(&mut self, values: Vec<f32>) {
        if values.capacity() <= largest_pixel_buffer(&self.spec.image) {
            self.pixel_buffer = values;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_rows_are_replaced_by_feature_rows_in_order() {
        let mut embeds = [0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0];
        fill_image_rows(&mut embeds, &[5, 9, 6, 9], 9, &[10.0, 11.0, 12.0, 13.0]).unwrap();
        assert_eq!(embeds, [0.0, 0.0, 10.0, 11.0, 2.0, 2.0, 12.0, 13.0]);
    }

    #[test]
    fn image_rows_and_feature_rows_must_agree_in_number() {
        let mut embeds = [0.0; 8];
        let error = fill_image_rows(&mut embeds, &[5, 9, 6, 9], 9, &[10.0, 11.0]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "model failure: the prompt has 2 image tokens but the encoder gave 1 feature rows"
        );
        assert_eq!(embeds, [0.0; 8]);
    }

    #[test]
    fn the_kept_pixel_buffer_holds_the_largest_still_image() {
        // SmolVLM2: a grid of 4 x 4 tiles of 512 and the global image, 17 tiles (53 MB of f32).
        assert_eq!(
            largest_pixel_buffer(&ImageSettings::SMOLVLM2),
            17 * 3 * 512 * 512
        );
        // A longest edge that is no multiple of the tile rounds the grid up: 3 x 3 tiles and the global.
        let image = ImageSettings {
            longest_edge: 1000,
            tile: 384,
            ..ImageSettings::SMOLVLM2
        };
        assert_eq!(largest_pixel_buffer(&image), 10 * 3 * 384 * 384);
    }
}
