//! Erasure coding of one block (`reed-solomon-simd`: SIMD on NEON and AVX2, chosen at run
//! time): a block is cut into `data` shards of equal, even length (the last padded with
//! zeros) and `parity` recovery shards are computed; any `data` of the `data + parity`
//! shards rebuild the block. Shard `j` lives on brick `j` of the block's set, under the
//! block's own name, with its own hash in the brick's header; the rebuilt block is checked
//! against the hash in the file's record.

use bytes::Bytes;

/// The length of each shard of a block of `block_length` bytes cut into `data` shards:
/// even (the codec works on 16-bit words) and at least 2.
pub fn shard_length(block_length: usize, data: usize) -> usize {
    let per = block_length.div_ceil(data.max(1)).max(1);
    per + per % 2
}

/// The `data + parity` shards of `block`, data shards first.
pub fn encode(block: &[u8], data: usize, parity: usize) -> Result<Vec<Bytes>, String> {
    let length = shard_length(block.len(), data);
    let mut padded = block.to_vec();
    padded.resize(length * data, 0);
    let originals: Vec<&[u8]> = padded.chunks(length).collect();
    let recovery = reed_solomon_simd::encode(data, parity, &originals)
        .map_err(|error| format!("erasure coding failed: {error}"))?;
    let mut shards: Vec<Bytes> = originals
        .iter()
        .map(|shard| Bytes::copy_from_slice(shard))
        .collect();
    shards.extend(recovery.into_iter().map(Bytes::from));
    Ok(shards)
}

/// Rebuilds a block of `block_length` bytes from at least `data` of its shards (`None`
/// for the ones that could not be read).
pub fn decode(
    block_length: usize,
    data: usize,
    parity: usize,
    shards: &[Option<Bytes>],
) -> Result<Vec<u8>, String> {
    let length = shard_length(block_length, data);
    let present = shards.iter().flatten().count();
    if present < data {
        return Err(format!(
            "{present} of the {} shards could be read; {data} are needed",
            data + parity
        ));
    }
    if shards.iter().flatten().any(|shard| shard.len() != length) {
        return Err("a shard has the wrong length".to_string());
    }
    let mut originals: Vec<Option<Bytes>> = shards[..data].to_vec();
    if originals.iter().any(Option::is_none) {
        let known = originals
            .iter()
            .enumerate()
            .filter_map(|(index, shard)| shard.as_ref().map(|shard| (index, shard.clone())));
        let recovery = shards[data..]
            .iter()
            .enumerate()
            .filter_map(|(index, shard)| shard.as_ref().map(|shard| (index, shard.clone())));
        let restored = reed_solomon_simd::decode(data, parity, known, recovery)
            .map_err(|error| format!("erasure decoding failed: {error}"))?;
        for (index, shard) in restored {
            if let Some(slot) = originals.get_mut(index) {
                *slot = Some(Bytes::from(shard));
            }
        }
    }
    let mut block = Vec::with_capacity(length * data);
    for shard in originals {
        block.extend_from_slice(&shard.ok_or("a data shard could not be rebuilt")?);
    }
    block.truncate(block_length);
    Ok(block)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_four_of_six_shards_rebuild_the_block() {
        let block: Vec<u8> = (0..1_000_003u32)
            .map(|value| (value * 31 % 251) as u8)
            .collect();
        let shards = encode(&block, 4, 2).unwrap();
        assert_eq!(shards.len(), 6);
        for lost_a in 0..6 {
            for lost_b in lost_a + 1..6 {
                let mut partial: Vec<Option<Bytes>> = shards.iter().cloned().map(Some).collect();
                partial[lost_a] = None;
                partial[lost_b] = None;
                assert_eq!(decode(block.len(), 4, 2, &partial).unwrap(), block);
            }
        }
        let mut three: Vec<Option<Bytes>> = shards.iter().cloned().map(Some).collect();
        three[0] = None;
        three[1] = None;
        three[5] = None;
        assert!(decode(block.len(), 4, 2, &three).is_err());
        // Tiny blocks too.
        let tiny = encode(b"x", 4, 2).unwrap();
        let partial: Vec<Option<Bytes>> = tiny
            .iter()
            .enumerate()
            .map(|(index, shard)| (index >= 2).then(|| shard.clone()))
            .collect();
        assert_eq!(decode(1, 4, 2, &partial).unwrap(), b"x");
    }
}
