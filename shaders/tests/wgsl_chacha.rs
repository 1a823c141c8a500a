//! The WGSL ChaCha8 block function against rand_chacha, word for word, on a real adapter
//! (lavapipe in CI). A missing adapter fails the test: it never skips.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use shaders::{ChachaQuery, chacha_words_source, key_words};
use wgpu::util::DeviceExt;

fn gpu() -> (wgpu::Device, wgpu::Queue) {
    pollster::block_on(async {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: wgpu::Backends::VULKAN,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions::default())
            .await
            .expect(
                "no Vulkan adapter: install Mesa's lavapipe (Debian: mesa-vulkan-drivers); \
                 `cargo xtask test` does this when run as root",
            );
        eprintln!("adapter: {:?}", adapter.get_info());
        adapter
            .request_device(&wgpu::DeviceDescriptor::default())
            .await
            .expect("device")
    })
}

fn run_queries(queries: &[ChachaQuery]) -> Vec<u32> {
    let (device, queue) = gpu();
    let _ = &queue;
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("chacha_words"),
        source: wgpu::ShaderSource::Wgsl(chacha_words_source().into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("chacha_words"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let input = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("queries"),
        contents: bytemuck::cast_slice(queries),
        usage: wgpu::BufferUsages::STORAGE,
    });
    let size = (queries.len() * 4) as u64;
    let output = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("words"),
        size,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("staging"),
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: input.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: output.as_entire_binding(),
            },
        ],
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups((queries.len() as u32).div_ceil(64), 1, 1);
    }
    encoder.copy_buffer_to_buffer(&output, 0, &staging, 0, size);
    queue.submit([encoder.finish()]);
    staging
        .slice(..)
        .map_async(wgpu::MapMode::Read, |r| r.expect("map"));
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .expect("poll");
    let view = staging.slice(..).get_mapped_range().expect("mapped");
    bytemuck::cast_slice(&view).to_vec()
}

#[test]
fn wgsl_chacha_matches_rand_chacha() {
    let mut meta = ChaCha8Rng::seed_from_u64(2023);
    let mut queries = Vec::new();
    let mut expected = Vec::new();
    for k in 0..4_096u64 {
        let mut seed = [0u8; 32];
        meta.fill_bytes(&mut seed);
        // Near 0, around the 2^32-bit boundary (2^27 words), and far past it.
        let pos: u64 = match k % 4 {
            0 => meta.next_u64() % 1_000,
            1 => (1u64 << 27) - 500 + meta.next_u64() % 1_000,
            2 => (1u64 << 32) - 8 + meta.next_u64() % 16,
            _ => meta.next_u64() >> 4,
        };
        let mut rng = ChaCha8Rng::from_seed(seed);
        rng.set_word_pos(u128::from(pos));
        expected.push(rng.next_u32());
        queries.push(ChachaQuery {
            key: key_words(&seed),
            pos_lo: pos as u32,
            pos_hi: (pos >> 32) as u32,
        });
    }
    let words = run_queries(&queries);
    for (i, (got, want)) in words.iter().zip(&expected).enumerate() {
        let q = &queries[i];
        assert_eq!(
            got,
            want,
            "query {i} at word position {}",
            (u64::from(q.pos_hi) << 32) | u64::from(q.pos_lo)
        );
    }
    assert_eq!(words.len(), 4_096);
}
